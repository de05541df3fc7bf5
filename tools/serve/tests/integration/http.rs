//! The library's server on the echo backend, through real sockets: response and stream shapes,
//! stop strings, concurrency, every error status, disconnects, timeouts, keep-alive, shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use serve::backend::Backend;

use crate::util::{self, config, get, post, raw, request, TestServer};

fn user(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

/// The JSON events of a stream, checking it ends with `[DONE]`.
fn chunks(response: &util::Response) -> Vec<Value> {
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("Content-Type"), Some("text/event-stream"));
    let mut events = response.events();
    assert_eq!(
        events.pop().as_deref(),
        Some("[DONE]"),
        "{:?}",
        response.body
    );
    events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[test]
fn chat_completion() {
    let server = TestServer::start(config(), Duration::ZERO);
    let r = post(
        server.addr,
        "/v1/chat/completions",
        &json!({"model": "any", "messages": user("hello")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "echo");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(
        choice["message"],
        json!({"role": "assistant", "content": "hello"})
    );
    assert_eq!(choice["finish_reason"], "stop");
    // [user] h e l l o [end] [assistant]
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13})
    );
}

#[test]
fn chat_stream_with_usage() {
    let server = TestServer::start(config(), Duration::from_millis(1));
    let body = json!({"messages": user("héllo"), "stream": true,
                      "stream_options": {"include_usage": true}});
    let events = chunks(&post(server.addr, "/v1/chat/completions", &body));
    let (last, rest) = events.split_last().unwrap();
    let (finish, rest) = rest.split_last().unwrap();
    assert_eq!(
        rest[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let mut text = String::new();
    for e in rest {
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["id"], events[0]["id"]);
        assert!(e["choices"][0]["finish_reason"].is_null());
        assert!(e["usage"].is_null());
        text += e["choices"][0]["delta"]["content"].as_str().unwrap();
    }
    assert_eq!(text, "héllo");
    assert_eq!(
        rest.len(),
        1 + 5,
        "a role chunk, then one chunk per character"
    );
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 6);
    assert_eq!(last["usage"]["total_tokens"], 9 + 6);
}

#[test]
fn text_completions_with_stop_strings_and_max_tokens() {
    let server = TestServer::start(config(), Duration::ZERO);
    let r = post(
        server.addr,
        "/v1/completions",
        &json!({"prompt": "abc STOP def", "stop": ["x", "STOP"]}),
    );
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], "abc ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let body = json!({"prompt": ["abcdef"], "max_tokens": 3, "stream": true});
    let events = chunks(&post(server.addr, "/v1/completions", &body));
    let (finish, rest) = events.split_last().unwrap();
    let text: String = rest
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "abc");
    assert!(rest
        .iter()
        .all(|e| e["object"] == "text_completion" && e.get("usage").is_none()));
    assert_eq!(finish["choices"][0]["text"], "");
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
}

#[test]
fn four_concurrent_streams() {
    let server = TestServer::start(config(), Duration::from_millis(5));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let addr = server.addr;
            thread::spawn(move || {
                let content = format!("client {i} says hi");
                let body = json!({"messages": user(&content), "stream": true});
                let events = chunks(&post(addr, "/v1/chat/completions", &body));
                let text: String = events
                    .iter()
                    .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
                    .collect();
                (content, text)
            })
        })
        .collect();
    for c in clients {
        let (sent, got) = c.join().unwrap();
        assert_eq!(got, sent);
    }
    server.wait_idle();
}

#[test]
fn bad_requests_get_openai_errors() {
    let server = TestServer::start(config(), Duration::ZERO);
    let a = server.addr;
    let chat = "/v1/chat/completions";
    request(a, "POST", chat, b"{\"messages\": [").assert_error(400, None);
    request(a, "POST", chat, b"").assert_error(400, None);
    post(
        a,
        chat,
        &json!({"messages": user("x"), "temperature": "warm"}),
    )
    .assert_error(400, Some("temperature"));
    post(a, chat, &json!({"messages": user("x"), "max_tokens": 65}))
        .assert_error(400, Some("max_tokens"));
    post(
        a,
        chat,
        &json!({"messages": [{"role": "robot", "content": "x"}]}),
    )
    .assert_error(400, Some("messages"));
    post(a, chat, &json!({"messages": user("x"), "n": 3})).assert_error(400, Some("n"));
    let r = post(a, "/v1/completions", &json!({"prompt": "x".repeat(200)}));
    r.assert_error(400, Some("prompt"));
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");

    let big = json!({"prompt": "x".repeat(5000)});
    let r = post(a, "/v1/completions", &big);
    r.assert_error(413, None);
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    // The same body, chunked (no Content-Length to check up front).
    let body = big.to_string();
    let chunked = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    raw(a, chunked.as_bytes()).assert_error(413, None);

    let r = get(a, "/v2/nothing");
    r.assert_error(404, None);
    assert_eq!(r.json()["error"]["code"], "unknown_url");
    let r = get(a, chat);
    r.assert_error(405, None);
    assert_eq!(r.header("Allow"), Some("POST"));
    let r = request(a, "POST", "/health", b"{}");
    r.assert_error(405, None);
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    request(a, "DELETE", "/v1/models", b"").assert_error(405, None);

    // Still serving, nothing left running.
    assert_eq!(get(a, "/health").status, 200);
    server.wait_idle();
}

#[test]
fn a_body_declared_enormous_gets_413_unread_and_the_server_lives_on() {
    let server = TestServer::start(config(), Duration::ZERO);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 1099511627776\r\n\r\n{}",
        )
        .unwrap();
    // Answered from the declared length alone, then closed: read to the end.
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");
    let r = get(server.addr, "/health");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    let server = TestServer::start(config(), Duration::from_millis(20));
    let body = json!({"messages": user(&"z".repeat(100)), "stream": true}).to_string();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let (status, _) = util::read_head(&mut reader);
    assert_eq!(status, 200);
    let mut line = String::new();
    while !line.contains("\"content\":\"z\"") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    assert_eq!(server.backend.stats().active, 1);
    let health = get(server.addr, "/health").json();
    assert_eq!(health["active"], 1, "{health}");
    drop(reader);
    server.wait_idle(); // 100 characters would take 2 s; the slot is freed well before 5 s
    assert_eq!(get(server.addr, "/health").json()["active"], 0);
}

#[test]
fn the_request_timeout_ends_a_reply_with_length() {
    let timeout = Duration::from_millis(300);
    let server = TestServer::start(
        util::Config {
            request_timeout: timeout,
            ..config()
        },
        Duration::from_millis(30),
    );
    let long = "y".repeat(60); // 1.8 s of echo
    let v = post(
        server.addr,
        "/v1/chat/completions",
        &json!({"messages": user(&long)}),
    )
    .json();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty() && text.len() < 60, "{text:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], text.len());

    let body = json!({"messages": user(&long), "stream": true});
    let events = chunks(&post(server.addr, "/v1/chat/completions", &body));
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    server.wait_idle();
}

#[test]
fn health_models_and_the_chat_page() {
    let server = TestServer::start(config(), Duration::ZERO);
    let h = get(server.addr, "/health").json();
    assert_eq!(
        h,
        json!({"status": "ok", "model": "echo", "active": 0, "queued": 0, "max_batch": 0})
    );
    let m = get(server.addr, "/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "echo");
    assert_eq!(m["data"][0]["object"], "model");
    let page = get(server.addr, "/?autosend=hi");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    for hook in [
        "id=\"messages\"",
        "id=\"input\"",
        "id=\"send\"",
        "/v1/chat/completions",
    ] {
        assert!(page.body.contains(hook), "{hook}");
    }
    let head = request(server.addr, "HEAD", "/health", b"");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
}

#[test]
fn keep_alive_after_a_stream_and_http_1_0_streams() {
    let server = TestServer::start(config(), Duration::ZERO);
    let stream_body = json!({"prompt": "ab", "stream": true}).to_string();
    let plain_body = json!({"prompt": "cd"}).to_string();
    let mut requests = Vec::new();
    for (body, close) in [(&stream_body, ""), (&plain_body, "Connection: close\r\n")] {
        write!(
            requests,
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{close}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    }
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&requests).unwrap();
    let mut reader = BufReader::new(stream);
    let first = util::read_response(&mut reader);
    assert_eq!(chunks(&first).len(), 3, "a, b, finish");
    let second = util::read_response(&mut reader);
    assert_eq!(second.json()["choices"][0]["text"], "cd");

    let old = format!(
        "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{stream_body}",
        stream_body.len()
    );
    let r = raw(server.addr, old.as_bytes());
    assert_eq!(r.header("Transfer-Encoding"), None);
    assert_eq!(chunks(&r).len(), 3);
}

#[test]
fn stopping_ends_running_streams_with_an_error_event() {
    let mut server = TestServer::start(config(), Duration::from_millis(20));
    let addr = server.addr;
    let client = thread::spawn(move || {
        let body = json!({"messages": user(&"w".repeat(100)), "stream": true});
        post(addr, "/v1/chat/completions", &body)
    });
    while server.backend.stats().active == 0 {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(100));
    server.stop(); // returns once every worker is done
    let r = client.join().unwrap();
    let events = chunks(&r);
    let last = events.last().unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{last}");
    assert!(events.len() > 2 && events.len() < 100, "{}", events.len());
}

#[test]
fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let server = TestServer::start(
        util::Config {
            write_timeout: Duration::from_secs(1),
            ..config()
        },
        Duration::ZERO,
    );
    // 2,000 pipelined page requests: ~20 MB of answers, far more than the socket buffers hold,
    // and the client reads nothing until the server has had time to give up on it.
    let pipelined = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(2000);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(pipelined.as_bytes()).unwrap();
    thread::sleep(Duration::from_secs(3));
    let mut answers = Vec::new();
    // Ends (EOF, or a reset once the buffered answers are read) because the server closed it.
    let _ = stream.read_to_end(&mut answers);
    let pages = String::from_utf8_lossy(&answers)
        .matches("HTTP/1.1 200 OK")
        .count();
    assert!(
        (1..2000).contains(&pages),
        "{pages} pages: the connection should have been closed while the client did not read"
    );
    assert_eq!(get(server.addr, "/health").status, 200);
}
