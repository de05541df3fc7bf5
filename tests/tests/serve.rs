//! `serve` as a user runs it: the real binary on a random-weight model file (the real GGUF + .mhc
//! format), on a free loopback port, spoken to over raw HTTP/1.1: chat and text completions,
//! streaming and not, stop strings, concurrent streams, bad input, a client that disconnects, and
//! the CLI mode.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use cross_tool_tests::serve::{http, model_files, start};
use serde_json::{json, Value};

fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http(addr, "POST", path, &body.to_string());
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The JSON payloads of a server-sent event stream, and whether it ended with [DONE].
fn sse_events(body: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(line).unwrap());
        }
    }
    (events, done)
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 12,
        "temperature": 0
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[test]
fn chat_completions_streaming_and_not_agree() {
    let server = start(&[]);
    let (status, v) = post(
        &server.addr,
        "/v1/chat/completions",
        &chat("fn add(", json!({})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 7);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    let (status, body) = http(
        &server.addr,
        "POST",
        "/v1/chat/completions",
        &chat("fn add(", json!({"stream": true})).to_string(),
    );
    assert_eq!(status, 200);
    let (events, done) = sse_events(&body);
    assert!(done, "stream ends with [DONE]: {body}");
    assert!(events
        .iter()
        .all(|e| e["object"] == "chat.completion.chunk"));
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text, "greedy: the stream spells the same reply");
    let last = events.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
}

#[test]
fn text_completion_honours_stop_strings() {
    let server = start(&[]);
    let body = |stop: Value| {
        json!({"prompt": "pub fn parse(input: &str) ->", "max_tokens": 24,
               "temperature": 0, "stop": stop})
    };
    let (status, v) = post(&server.addr, "/v1/completions", &body(Value::Null));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let full = v["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 6, "completion too short to cut: {full:?}");
    let stop: String = chars[3..5].iter().collect();
    let (_, v) = post(&server.addr, "/v1/completions", &body(json!([stop])));
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap(),
        &full[..full.find(&stop).unwrap()]
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn four_concurrent_streams_all_finish() {
    let server = start(&["--max-batch", "4"]);
    let addr = server.addr.clone();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body = chat(
                    &format!("struct S{i} {{"),
                    json!({"stream": true, "max_tokens": 16}),
                );
                let (status, text) = http(&addr, "POST", "/v1/chat/completions", &body.to_string());
                assert_eq!(status, 200);
                let (events, done) = sse_events(&text);
                assert!(done && !events.is_empty());
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_lives_on() {
    let server = start(&["--max-tokens-cap", "64", "--max-body-bytes", "4096"]);
    let a = &server.addr;
    let error_of = |status: u16, body: &str, want: u16| {
        assert_eq!(status, want, "{body}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    };
    let (s, b) = http(a, "POST", "/v1/chat/completions", "{not json");
    error_of(s, &b, 400);
    let (s, b) = http(a, "POST", "/v1/chat/completions", r#"{"messages": "hi"}"#);
    error_of(s, &b, 400);
    let (s, b) = http(
        a,
        "POST",
        "/v1/chat/completions",
        &chat("x", json!({"max_tokens": 100000})).to_string(),
    );
    error_of(s, &b, 400);
    let (s, b) = http(
        a,
        "POST",
        "/v1/completions",
        &json!({"prompt": "x".repeat(3000)}).to_string(),
    );
    error_of(s, &b, 400); // 3000 byte tokens > context 256
    let (s, b) = http(
        a,
        "POST",
        "/v1/completions",
        &json!({"prompt": "x".repeat(5000)}).to_string(),
    );
    error_of(s, &b, 413);
    let (s, b) = http(a, "GET", "/v2/nothing", "");
    error_of(s, &b, 404);
    let (s, b) = http(a, "GET", "/v1/chat/completions", "");
    error_of(s, &b, 405);
    let (s, b) = http(
        a,
        "POST",
        "/v1/chat/completions",
        &chat(
            "x",
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
        )
        .to_string(),
    );
    error_of(s, &b, 400);
    // Still serving.
    let (s, b) = http(a, "GET", "/health", "");
    assert_eq!(s, 200, "{b}");
    let (s, b) = http(a, "GET", "/v1/models", "");
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["data"][0]["id"], "tiny");
    let (s, b) = http(a, "GET", "/", "");
    assert_eq!(s, 200);
    assert!(
        b.contains("<html") || b.contains("<!DOCTYPE"),
        "the chat page"
    );
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    let server = start(&["--max-batch", "1"]);
    let a = server.addr.clone();
    let body = chat(
        "loop {",
        json!({"stream": true, "max_tokens": 200, "temperature": 1.0}),
    )
    .to_string();
    let mut s = TcpStream::connect(&a).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 64];
    let _ = s.read(&mut first).unwrap();
    drop(s);
    // With one slot, a new request only finishes if the abandoned one was freed.
    let start = Instant::now();
    let (status, v) = post(
        &a,
        "/v1/chat/completions",
        &chat("x", json!({"max_tokens": 2})),
    );
    assert_eq!(status, 200, "{v}");
    assert!(start.elapsed() < Duration::from_secs(60));
    let (_, health) = http(&a, "GET", "/health", "");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert!(health.to_string().contains("\"active\":0"), "{health}");
}

#[test]
fn cli_mode_prints_one_completion() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = model_files(dir.path());
    let complete = || {
        Command::new(assert_cmd::cargo::cargo_bin("serve"))
            .arg("--model")
            .arg(&gguf)
            .args([
                "--prompt",
                "fn main() {",
                "--max-tokens",
                "8",
                "--temperature",
                "0",
            ])
            .output()
            .unwrap()
    };
    let out = complete();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = complete();
    assert_eq!(out.stdout, again.stdout, "greedy is deterministic");

    let missing = Command::new(assert_cmd::cargo::cargo_bin("serve"))
        .args(["--model", "/nonexistent/m.gguf", "--prompt", "x"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("m.gguf"));
}

/// `serve --bench` on a small model file: the JSON report has every figure, and the ones that
/// follow from the model (weight bytes read per token, operations per token) are its real sizes.
/// Speeds are only checked to be measured (positive), never against a threshold.
#[test]
fn bench_mode_reports_every_figure_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, mhc) = model_files(dir.path());
    let out = Command::new(assert_cmd::cargo::cargo_bin("serve"))
        .arg("--model")
        .arg(&gguf)
        .arg("--mhc")
        .arg(&mhc)
        .args(["--bench", "--threads", "2", "--json"])
        .args(["--bench-prompt-tokens", "16", "--bench-decode-tokens", "8"])
        .args(["--bench-streams", "3", "--bench-repeats", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Planar form: rows padded to tiles of 8, per row and group of 128 weights 32 bytes of
    // codes and a 4-byte scale.
    let config = model::Model::load(&gguf, Some(&mhc)).unwrap().0.config;
    let planar_bytes: usize = config
        .ternary_weights()
        .iter()
        .map(|(_, rows, cols)| rows.next_multiple_of(8) * cols.div_ceil(128) * (32 + 4))
        .sum();
    assert_eq!(
        report["ternary_weight_bytes_per_token"],
        json!(planar_bytes)
    );
    let macs: usize = config.ternary_weights().iter().map(|(_, r, c)| r * c).sum();
    assert_eq!(report["weight_ops_per_token"], json!(2.0 * macs as f64));
    let per_threads = report["per_threads"].as_array().unwrap();
    assert_eq!(per_threads.len(), 2, "1 thread and --threads");
    for row in per_threads {
        for key in [
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
            "batched_decode_tokens_per_s",
        ] {
            assert!(row[key].as_f64().unwrap() > 0.0, "{key}: {row}");
        }
    }
    for key in [
        "kernel_gops_1_thread",
        "efficiency_1_thread",
        "read_bandwidth_1_thread_bytes_per_s",
        "decode_1_thread_weight_bytes_per_s",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert_eq!(report["engine"]["streams"], json!(3));
    assert!(stderr.contains("memory roofline:"), "{stderr}");
    // The compute roofline: the kernel's peak over the operations per token, where the kernel
    // has a probe (every SIMD kernel; the portable ones have none).
    let engine = &report["engine"];
    match engine["arithmetic_peak_gops"].as_f64() {
        Some(gops) => {
            let ceiling = engine["products_ceiling_tokens_per_s"].as_f64().unwrap();
            let expected = gops * 1e9 / (2.0 * macs as f64);
            assert!(
                (ceiling - expected).abs() <= 1e-9 * expected,
                "{ceiling} vs {expected}"
            );
            assert!(stderr.contains("compute roofline:"), "{stderr}");
        }
        None => assert!(engine["products_ceiling_tokens_per_s"].is_null()),
    }
}
